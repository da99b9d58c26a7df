include(CMakePackageConfigHelpers)

set(GRADFLOW_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/gradflow)

install(TARGETS gradflow_core gradflow EXPORT gradflowTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/gradflow DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT gradflowTargets NAMESPACE gradflow:: DESTINATION ${GRADFLOW_CMAKE_DIR})

configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/gradflowConfig.cmake.in
  ${PROJECT_BINARY_DIR}/gradflowConfig.cmake INSTALL_DESTINATION ${GRADFLOW_CMAKE_DIR})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/gradflowConfigVersion.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMajorVersion)
install(FILES ${PROJECT_BINARY_DIR}/gradflowConfig.cmake ${PROJECT_SOURCE_DIR}/cmake/GradflowTorch.cmake
              ${PROJECT_BINARY_DIR}/gradflowConfigVersion.cmake
        DESTINATION ${GRADFLOW_CMAKE_DIR})
